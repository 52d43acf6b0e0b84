"""From a study's front to full training and back: select, export, confirm with more
seeds, launch, the full run and its write-back, and the proxy's fidelity."""
