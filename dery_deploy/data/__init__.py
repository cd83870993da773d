"""Data: Fashion-MNIST, image folders, probe sampling, and the `--data` spec strings."""
