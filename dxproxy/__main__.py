from dxproxy.main import cli

cli()
