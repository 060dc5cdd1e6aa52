from loradex.cli import main

main()
