from cml_infra.entry import main

main()
