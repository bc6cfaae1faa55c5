"""Scene classification (``task: scene``): a label, or several, per chip; timm classifiers by name."""
