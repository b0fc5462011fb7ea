from lightning_retrieval.cli import main

main()
