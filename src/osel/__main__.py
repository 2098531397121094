from osel.cli import main

main()
