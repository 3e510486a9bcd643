"""The local OCR engine: Tesseract recognising pages behind the CLOVA General contract."""
