"""The refresher, the CLI and settings: wires streams, models, vectorstore and monitoring together."""
