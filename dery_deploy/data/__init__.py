"""Data: the Task every stage takes (labelled train / validation / test, unlabelled images, classes,
input spec), Fashion-MNIST (the embedded default) and image folders."""

from dery_deploy.data.probe import probe_images
from dery_deploy.data.task import DEFAULT_DATA, ImageSet, InputSpec, Task, load_task

__all__ = ["DEFAULT_DATA", "ImageSet", "InputSpec", "Task", "load_task", "probe_images"]
