"""Text featuriser, co-interaction graph, vector models, training and evaluation."""
