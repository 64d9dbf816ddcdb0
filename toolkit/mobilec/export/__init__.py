"""Exporters: one module per target; heavy runtime imports stay inside them."""
