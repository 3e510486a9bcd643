"""The CLOVA OCR API as ocrbatch speaks it: the contract, the client, the retry policy, what a
document costs."""
