"""ocrbatch: a self-hosted CLOVA OCR Batch. See README.md."""
