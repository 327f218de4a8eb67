"""Running `python -m diffusion_jax.main` in the test's own process: what main runs after parsing its flags.

A subprocess costs a Python start and the imports (several seconds on CI's 2 cores), so each task's tests run the
command line itself (its flag parser, exit code 2 and one-line error) once or twice, and the other cases here.
"""
from diffusion_jax import main
from diffusion_jax.config import load_config


def run(config_path: str, workdir, mode: str = "train", **flags):
    """`main --config=CONFIG_PATH --workdir=WORKDIR --mode=MODE --config.KEY=VALUE ...` without the parser: keys are
    spelled with '__' for '.' (sample__prompts for sample.prompts); returns what `main.run` returns."""
    config = load_config(config_path)
    config.update_from_flattened_dict({key.replace("__", "."): value for key, value in flags.items()})
    return main.run(config, str(workdir), mode)


def user_error(excinfo) -> str:
    """The message of a raised error (a pytest ExceptionInfo) that main reports in one line with exit code 2."""
    assert isinstance(excinfo.value, main._USER_ERRORS), f"main would not report {excinfo.value!r} in one line"
    return str(excinfo.value)
