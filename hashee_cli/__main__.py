from hashee_cli.cli import main

main()
