"""Training: :func:`train` (stage 3), the LightningModule, the DataModule, losses, augmentation and speed."""

from eoforge.train.datamodule import ChipDataModule
from eoforge.train.fit import TrainResult, train
from eoforge.train.task import SegmentationTask, TaskModule, present_class_miou

__all__ = ["ChipDataModule", "SegmentationTask", "TaskModule", "TrainResult", "present_class_miou", "train"]
