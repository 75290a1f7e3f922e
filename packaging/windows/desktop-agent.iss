; Inno Setup 6 script: a per-user installer for desktop-agent (no administrator
; rights, nothing outside the user's profile and HKCU).
;
;   iscc /DAppVersion=0.1.0 packaging\windows\desktop-agent.iss
;
; from the repository root, after PyInstaller has built dist\desktop-agent\
; (desktop-agent.exe, desktop-agent-tray.exe, _internal\) and the icon
; (build\package\pyinstaller\desktop-agent\icons\desktop-agent.ico, with
; --workpath build\package\pyinstaller); see README.md here.
; The installer lands in dist\.

#ifndef AppVersion
  #error Pass the version: iscc /DAppVersion=X.Y.Z packaging\windows\desktop-agent.iss
#endif
#ifndef DistDir
  #define DistDir "..\..\dist\desktop-agent"
#endif
#ifndef IconFile
  #define IconFile "..\..\build\package\pyinstaller\desktop-agent\icons\desktop-agent.ico"
#endif

[Setup]
; The AppId identifies the installation for upgrades and uninstall: never change it.
AppId={{EC613376-2BF7-4813-810D-697504EF9AB3}
AppName=desktop-agent
AppVersion={#AppVersion}
AppVerName=desktop-agent {#AppVersion}
AppPublisher=desktop-agent
; Per user: %LOCALAPPDATA%\Programs\desktop-agent, Start menu entries of this
; user, uninstall entry under HKCU. No UAC prompt.
PrivilegesRequired=lowest
DefaultDirName={localappdata}\Programs\desktop-agent
DisableDirPage=auto
DisableProgramGroupPage=yes
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
OutputDir=..\..\dist
OutputBaseFilename=desktop-agent-{#AppVersion}-windows-x64-setup
SetupIconFile={#IconFile}
UninstallDisplayIcon={app}\desktop-agent-tray.exe
UninstallDisplayName=desktop-agent
Compression=lzma2/max
SolidCompression=yes
WizardStyle=modern
; A running tray app holds its files open: close it (Restart Manager) before
; files are replaced or removed.
CloseApplications=yes
RestartApplications=no
; for the optional PATH entry
ChangesEnvironment=yes

[Tasks]
Name: "autostart"; Description: "Start desktop-agent when I sign in"
Name: "addtopath"; Description: "Add desktop-agent to my PATH (for the command line)"; Flags: unchecked

[Files]
Source: "{#DistDir}\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[InstallDelete]
; an upgrade replaces the bundle as a whole: no module of an older version may linger
Type: filesandordirs; Name: "{app}\_internal"

[Icons]
; {autoprograms} is the user's Start menu with PrivilegesRequired=lowest
Name: "{autoprograms}\desktop-agent"; Filename: "{app}\desktop-agent-tray.exe"; Comment: "Backups you can keep an eye on"

[Registry]
Root: HKCU; Subkey: "Environment"; ValueType: expandsz; ValueName: "Path"; \
    ValueData: "{olddata};{app}"; Tasks: addtopath; Check: NotInUserPath(ExpandConstant('{app}'))

[Run]
; The app writes its own HKCU\...\Run value (pointing at desktop-agent-tray.exe),
; the same one its settings switch and `desktop-agent autostart` manage.
Filename: "{app}\desktop-agent.exe"; Parameters: "autostart enable"; Flags: runhidden waituntilterminated; \
    StatusMsg: "Turning on the start at sign-in..."; Tasks: autostart
Filename: "{app}\desktop-agent-tray.exe"; Description: "Start desktop-agent now"; \
    Flags: nowait postinstall skipifsilent

[UninstallRun]
; before the files go: remove the Run value, or Windows would start a missing program at sign-in
Filename: "{app}\desktop-agent.exe"; Parameters: "autostart disable"; Flags: runhidden waituntilterminated; \
    RunOnceId: "AutostartDisable"

[Code]
function NotInUserPath(Dir: string): Boolean;
var
  Path: string;
begin
  if not RegQueryStringValue(HKCU, 'Environment', 'Path', Path) then
    Path := '';
  Result := Pos(';' + Uppercase(Dir) + ';', ';' + Uppercase(Path) + ';') = 0;
end;

procedure CurUninstallStepChanged(CurUninstallStep: TUninstallStep);
var
  Path, Dir: string;
  P: Integer;
begin
  { take our directory back out of the user's PATH }
  if CurUninstallStep <> usPostUninstall then
    exit;
  if not RegQueryStringValue(HKCU, 'Environment', 'Path', Path) then
    exit;
  Dir := ExpandConstant('{app}');
  P := Pos(';' + Uppercase(Dir), Uppercase(Path));
  if P > 0 then
  begin
    Delete(Path, P, Length(Dir) + 1);
    RegWriteExpandStringValue(HKCU, 'Environment', 'Path', Path);
  end;
end;
