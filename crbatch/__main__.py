from .signals import install

install()  # before the command line is parsed and the stages imported: no moment without a handler

from .cli import run  # noqa: E402

run()
