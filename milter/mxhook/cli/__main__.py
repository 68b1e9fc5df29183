from mxhook.cli import main

main()
