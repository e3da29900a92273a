"""The library every stage shares: config, records and their wire format, transport, metrics, logging, exchanges."""
