"""Hot loops: the composite median and the image metrics, each with a NumPy twin for tests."""
