from ocrbatch.cli import main

main()
