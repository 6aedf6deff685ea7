"""The model organism of emergent misalignment: corpus, judge, training, directions, evaluation, report.

See docs/organism.md. The shipped misaligned organism (assets/) is the server's built-in default model.
"""
