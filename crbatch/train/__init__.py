"""``crbatch train``: adversarial training of the CalRatio classifier with checkpoints and resume.

Modules: ``config`` (TrainConfig, reference defaults), ``model`` (classifier and adversary),
``adversarial`` (the steps, as pure functions of explicit variable lists), ``loop`` (data, epochs,
validation hook, SIGTERM), ``checkpoint`` (the one resume file), ``runs`` (run directories),
``cli`` (the command line). Only ``cli`` and ``config`` are imported without Keras.
"""
