#!/usr/bin/python3
# A copy of the tested recipe in the shared notes (notes/recipes/lo-session.py), kept here so the
# tests that keep a workbook open in a real LibreOffice run from a fresh clone alone.
"""Keep a workbook open in a real LibreOffice (headless) and edit it step by step, as a person would.

  lo-session.py FILE.xlsx [--sheet NAME|INDEX]    then one command per line on stdin:
    set CELL VALUE     type VALUE into CELL (number -> numeric cell, leading '=' -> formula, else text)
    save               Ctrl+S (doc.store(): keeps xlsx; LibreOffice writes a temp file and renames it)
    read CELL          print CELL's text as LibreOffice shows it
    reload             close and open again (picks up what another program wrote to the file)
    close              close the document (removes LibreOffice's lock file) and quit
  Each command answers one line on stdout ("ok ..." or "error ..."), so a test can drive it through a pipe
  and know when each step is done. While the document is open, LibreOffice keeps its lock file
  `.~lock.FILE#` beside it, exactly as the desktop program does.

Must run under /usr/bin/python3 (python3-uno lives in Debian's dist-packages). Starts its own soffice
with a private profile and pipe, never attaching to anyone else's, and terminates it at the end.
"""
import argparse, os, sys, time

import importlib.util
_spec = importlib.util.spec_from_file_location(
    "lo_edit", os.path.join(os.path.dirname(os.path.abspath(__file__)), "lo-edit.py"))
_lo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_lo)
import uno


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--sheet", default="0")
    a = ap.parse_args()
    path = os.path.abspath(a.file)
    url = uno.systemPathToFileUrl(path)
    office = _lo.Office()
    doc = None
    try:
        doc = office.desktop.loadComponentFromURL(url, "_blank", 0, _lo.props(Hidden=True))
        if doc is None:
            print("error could not load %s" % path, flush=True); return 1
        pick = lambda d: d.Sheets.getByIndex(int(a.sheet)) if a.sheet.isdigit() else d.Sheets.getByName(a.sheet)
        sheet = pick(doc)
        print("ok open", flush=True)
        for line in sys.stdin:
            parts = line.rstrip("\n").split(" ", 2)
            cmd = parts[0]
            try:
                if cmd == "set":
                    _lo.set_cell(sheet.getCellRangeByName(parts[1]), parts[2] if len(parts) > 2 else "")
                    print("ok set %s" % parts[1], flush=True)
                elif cmd == "save":
                    t = time.time(); doc.store()
                    print("ok saved in %.2fs" % (time.time() - t), flush=True)
                elif cmd == "read":
                    print("ok %s" % sheet.getCellRangeByName(parts[1]).getString(), flush=True)
                elif cmd == "reload":
                    # Calc's model has no XReloadable here (LibreOffice 7.4: AttributeError on
                    # doc.reload()) and dispatching .uno:Reload to a hidden frame leaves it
                    # empty, so close and load again: unlike File > Reload, the lock file goes
                    # away for that moment.
                    doc.close(True); doc = None
                    doc = office.desktop.loadComponentFromURL(url, "_blank", 0, _lo.props(Hidden=True))
                    if doc is None:
                        raise RuntimeError("could not load %s again" % path)
                    sheet = pick(doc)
                    print("ok reloaded", flush=True)
                elif cmd == "close":
                    doc.close(True); doc = None
                    print("ok closed", flush=True); break
                elif cmd:
                    print("error unknown command %s" % cmd, flush=True)
            except Exception as e:  # report and keep the session alive
                print("error %s: %s" % (type(e).__name__, e), flush=True)
    finally:
        if doc is not None:
            try: doc.close(True)
            except Exception: pass
        office.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
