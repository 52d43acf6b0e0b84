"""How a config is scored: data, the CIFAR-10 proxy trainer and the full trainer.

Imports torch only: a trainer must run on a GPU box that has nothing else of ours.
"""
