"""Storage backends: where accepted instances are kept (``IStorage``)."""
