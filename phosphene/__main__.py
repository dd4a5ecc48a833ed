from phosphene.cli import main

main()
