"""The petrography domain as data: the bilingual lexicon, the question pools and grounded questions.

Why a package of its own: training (the closed-form projector fit), evaluation (domain score, question
following) and the data tools (convert, synth, pseudo-labels) all read the same vocabulary and the same
question templates, so they live below all three.
"""
