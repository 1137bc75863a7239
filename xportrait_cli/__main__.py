from xportrait_cli.cli import main

main()
