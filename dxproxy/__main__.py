from dxproxy.cli.main import cli

cli()
