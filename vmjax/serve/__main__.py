"""python -m vmjax.serve --model model.npz --port 8000 (see vmjax.serve.cli.main)."""

from vmjax.serve.cli import main

if __name__ == "__main__":
    main()
