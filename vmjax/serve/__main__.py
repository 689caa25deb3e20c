"""python -m vmjax.serve --model model.bin --port 8000 (see vmjax.serve.app.main)."""

from vmjax.serve.app import main

if __name__ == "__main__":
    main()
