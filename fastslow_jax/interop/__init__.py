"""Models in and out of the zoo: Hugging Face Llama checkpoints, and retrofitting a pretrained
dense model with a slow path.

    safetensors_io   safetensors files with numpy, one tensor at a time (no torch)
    llama            LlamaForCausalLM <-> the dense model: config fields, tensor names, layouts
    sources          pretrained dense models: a Hugging Face directory or a dense run of ours
    retrofit         `config.init_from`: load the shared parameters into a model of any family

The command line is `python -m fastslow_jax.convert import|export`.
"""
