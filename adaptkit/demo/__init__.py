"""The built-in demo: a tiny byte-level Llama, two skills, adapters, combinations, export.

``adaptkit demo`` runs the whole pipeline offline in a few minutes on a laptop CPU; see
:func:`adaptkit.demo.run.run_demo`.
"""
