"""Pieces of the patterns that bodies and parameters are checked against.

msgspec and Litestar check a pattern with Python's `re.search`, where `$` also matches just
before a final newline: `^[A-Z]{3}$` lets `"EUR\\n"` through. A pattern that must end the
value ends with END instead, which does not, and reads the same in the OpenAPI document's
JSON Schema (ECMAScript regular expressions have the lookahead, not `\\Z`).
"""

END = r"(?!\n)$"
