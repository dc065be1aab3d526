"""Sessions and signed identities: JWT signing keys (``keys``) and the tokens made with
them (``tokens``), both without I/O; the store keeps the sealed keys."""
