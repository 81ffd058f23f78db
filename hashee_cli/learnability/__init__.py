"""Can instance difficulty be learned? Probes, baselines and model-defined difficulty labels.

``metrics`` scores probes, ``difficulty`` reads and writes label files,
``probes`` and ``experiment`` train and compare the probes, and ``labels``
and ``conll`` build model-defined labels from a multi-exit model.
"""
