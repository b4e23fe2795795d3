from l2v_cli.cli.main import run

run()
