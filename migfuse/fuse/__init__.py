"""Stage 2: light fusion heads trained on cached tokens. Needs torch and `migfuse.data_cache` only."""
