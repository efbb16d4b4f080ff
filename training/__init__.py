"""Training of the reference weights that ship in `weights/` (`python -m training.train`), its data loading and the
predictions figure.

May import the model library and the client's preprocessing and metrics (so training measures exactly what the
client serves); nothing imports training except its tests.
"""
