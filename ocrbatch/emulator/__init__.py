"""A CLOVA OCR compatible server with the service's checks, limits and injectable faults."""
