"""RetinaNet with a sigmoid focal-loss head: data, model, training and evaluation.

No web code lives here; the service reaches the ML through the names exported below.
"""
