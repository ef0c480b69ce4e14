"""diffusion_core: a small, readable diffusion-model toolkit (forward process, U-Net, samplers,
training, evaluation) and the engine behind the project's Gradio app."""
__version__ = "0.1.0"
