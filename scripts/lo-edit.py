#!/usr/bin/python3
# A copy of the tested recipe in the shared notes (notes/recipes/lo-edit.py), kept here so the
# tests that let a real LibreOffice edit a workbook run from a fresh clone alone.
"""Edit cells of an existing .xlsx with a real LibreOffice (headless) via Python-UNO, save back as .xlsx.

Needs Debian packages libreoffice-calc-nogui + python3-uno and MUST run under /usr/bin/python3
(the `uno` module lives in /usr/lib/python3/dist-packages; pyenv/venv pythons don't see it).

  lo-edit.py FILE.xlsx CELL=VALUE [CELL=VALUE ...] [--sheet NAME|INDEX] [--mode store|storeas|storeto]
       VALUE: number -> numeric cell, leading '=' -> formula, anything else -> string
  lo-edit.py FILE.xlsx --read CELL [CELL ...]        print cell contents (after recalculation)

Starts its own soffice with a private profile (-env:UserInstallation) and a private UNO pipe, so it
never attaches to another user's/session's running LibreOffice, and terminates it afterwards.
"""
import argparse, os, shutil, subprocess, sys, tempfile, time

import uno
from com.sun.star.beans import PropertyValue
from com.sun.star.connection import NoConnectException


def props(**kw):
    out = []
    for k, v in kw.items():
        p = PropertyValue(); p.Name = k; p.Value = v; out.append(p)
    return tuple(out)


class Office:
    def __init__(self):
        self.profile = tempfile.mkdtemp(prefix="lo-profile-")
        self.pipe = "lo_edit_%d" % os.getpid()
        cmd = ["soffice", "--headless", "--invisible", "--nologo", "--norestore", "--nodefault",
               "--nolockcheck", "-env:UserInstallation=file://" + self.profile,
               "--accept=pipe,name=%s;urp;StarOffice.ComponentContext" % self.pipe]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        local = uno.getComponentContext()
        resolver = local.ServiceManager.createInstanceWithContext("com.sun.star.bridge.UnoUrlResolver", local)
        t0 = time.time()
        while True:
            try:
                self.ctx = resolver.resolve(
                    "uno:pipe,name=%s;urp;StarOffice.ComponentContext" % self.pipe)
                break
            except NoConnectException:
                if self.proc.poll() is not None or time.time() - t0 > 60:
                    raise RuntimeError("soffice did not come up")
                time.sleep(0.1)
        self.startup_s = time.time() - t0
        self.desktop = self.ctx.ServiceManager.createInstanceWithContext("com.sun.star.frame.Desktop", self.ctx)

    def close(self):
        try:
            self.desktop.terminate()
        except Exception:
            pass  # the bridge is torn down while terminate() returns -> DisposedException is normal
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill(); self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


def set_cell(cell, value):
    if value.startswith("="):
        cell.setFormula(value)
    else:
        try:
            cell.setValue(float(value))
        except ValueError:
            cell.setString(value)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("assign", nargs="*", help="CELL=VALUE")
    ap.add_argument("--sheet", default="0")
    ap.add_argument("--read", nargs="+", metavar="CELL")
    ap.add_argument("--mark", action="store_true",
                    help="touch+remove .mark-<phase> files next to FILE (to delimit phases in inotify logs)")
    ap.add_argument("--mode", default="store", choices=["store", "storeas", "storeto"],
                    help="store(): like Ctrl+S; storeas: storeAsURL same path; storeto: storeToURL (export)")
    a = ap.parse_intermixed_args()
    path = os.path.abspath(a.file)
    url = uno.systemPathToFileUrl(path)

    def mark(phase):
        if a.mark:
            m = os.path.join(os.path.dirname(path), ".mark-" + phase)
            open(m, "w").close(); os.unlink(m)
    t0 = time.time()
    office = Office()
    try:
        mark("office-up")
        doc = office.desktop.loadComponentFromURL(url, "_blank", 0, props(Hidden=True, ReadOnly=bool(a.read)))
        mark("loaded")
        if doc is None:
            sys.exit("could not load %s" % path)
        sheets = doc.Sheets
        sheet = sheets.getByIndex(int(a.sheet)) if a.sheet.isdigit() else sheets.getByName(a.sheet)
        if a.read:
            doc.calculateAll()
            for c in a.read:
                cell = sheet.getCellRangeByName(c)
                print("%s\t%s" % (c, cell.getString()))
        else:
            for asg in a.assign:
                ref, _, val = asg.partition("=")
                set_cell(sheet.getCellRangeByName(ref), val)
            doc.calculateAll()
            xlsx = props(FilterName="Calc MS Excel 2007 XML", Overwrite=True)
            ts = time.time()
            if a.mode == "store":
                doc.store()                      # keeps the import filter (xlsx) - no "keep format?" prompt headless
            elif a.mode == "storeas":
                doc.storeAsURL(url, xlsx)
            else:
                doc.storeToURL(url, xlsx)
            print("saved %s (%s) in %.2fs" % (path, a.mode, time.time() - ts), file=sys.stderr)
            mark("saved")
        doc.close(True)
        mark("closed")
    finally:
        office.close()
    print("soffice startup %.2fs, total %.2fs" % (office.startup_s, time.time() - t0), file=sys.stderr)


if __name__ == "__main__":
    main()
