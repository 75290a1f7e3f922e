"""Qt user interface: bootstrap (QApplication + qasync), bridge, tray, windows."""
