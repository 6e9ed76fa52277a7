"""Model facts: exact parameter counts without weights, the catalog, the layer classes."""
