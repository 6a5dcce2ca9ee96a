"""The contracts every plugin meets: base classes, hyper-parameters, the registry and output guards."""
