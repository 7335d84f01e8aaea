"""Presenters: render a comparison or a trace as text, JSON or HTML. They walk results; they never decide."""
