"""Ballé-style learned image codecs on CompressAI: models, losses, data, training, bitstreams, evaluation."""
import warnings

# CompressAI's import-time torch.jit.script calls warn on every command with recent torch; not actionable here.
warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
