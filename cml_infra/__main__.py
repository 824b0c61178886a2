from cml_infra.cli import main

main()
