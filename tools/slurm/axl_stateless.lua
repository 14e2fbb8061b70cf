--[[
axl_stateless.lua: finalize a Slurm job's destination roots at burst-buffer stage-out.

A job asks for it with one or more lines in its batch script (absolute roots, shell-like quoting):

    #BB_LUA axl_finalize /p/scratch/alice/run42 '/p/scratch/alice/run 43'

A site's burst_buffer.lua loads this file once and calls it from its own slurm_bb_data_out, after its
own data movement (the complete burst_buffer.lua beside this file does exactly that):

    local axl = dofile("/etc/slurm/axl_stateless.lua")
    function slurm_bb_data_out(job_id, job_script, uid, gid, job_info)
        local started = os.time()
        -- ... the site's own stage-out ...
        return axl.data_out(job_id, job_script, uid, gid, started)
    end

and, optionally, from its slurm_bb_job_process, to reject a malformed directive at submission:

    local rc, msg = axl.job_process(job_script)
    if rc ~= slurm.SUCCESS then return rc, msg end

data_out runs `axl-stateless finalize` over the roots as the job's user (never as root), with its
report in the first root, and returns slurm.SUCCESS when finalize exits 0, else slurm.ERROR and one
line (finalize's exit code, what it means, finalize's summary) that Slurm puts in the job's Reason.
A job without the directive is not touched. Works with Lua 5.1 to 5.4 (Slurm links any of them).
--]]

local M = {}

-- Settings: a site edits these, or sets fields of the returned table after loading it.
M.settings = {
	-- The axl-stateless command, split into words at white space (e.g. "/opt/axl/bin/axl-stateless"
	-- or "/usr/bin/python3 -m axlstateless"). $AXL_STATELESS in slurmctld's environment overrides it.
	command = "axl-stateless",
	-- More finalize options, one word each, e.g. { "--fsync", "--jobs", "16" }.
	finalize_options = {},
	-- Where the report goes: %r the first root, %j the job id, %t the UTC time of the run. Job ids are
	-- unique, so two jobs never share a report; should the same job's stage-out run again (slurmctld
	-- restarted), ".2", ".3", ... is put before ".jsonl" rather than overwrite the first report.
	report = "%r/axl-finalize.%j.jsonl",
	-- Seconds finalize may wait on transfers (only with a waiting backend, e.g. --backend ibmbb); nil:
	-- what is left of StageOutTimeout (burst_buffer.conf beside slurm.conf) less a margin for the commits.
	wait_timeout = nil,
	-- true: burst_buffer.lua's slurm_bb_job_process rejects at sbatch a job whose directive is
	-- malformed or names a relative root; false: such a job runs, and its stage-out fails with the error
	-- in the job's Reason, changing nothing.
	check_at_submission = false,
	-- The Directive= of burst_buffer.conf.
	directive = "BB_LUA",
	-- The directory of burst_buffer.conf (for StageOutTimeout); nil: that of $SLURM_CONF, else /etc/slurm.
	-- The complete burst_buffer.lua sets it to its own directory.
	conf_dir = nil,
	-- The commands this module runs; PATH is also the job user's PATH while finalize runs.
	setpriv = "setpriv",
	scontrol = "scontrol",
	path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
}

local SUCCESS = slurm and slurm.SUCCESS or 0
local ERROR = slurm and slurm.ERROR or -1

local function log(fmt, ...)
	if slurm and slurm.log_info then
		slurm.log_info("axl_stateless: " .. fmt, ...)
	end
end

-- One word for /bin/sh, whatever it holds (roots may contain spaces, quotes, $, ;).
local function quote(s)
	return "'" .. (string.gsub(s, "'", [['\'']])) .. "'"
end
M.quote = quote

local function quote_all(words)
	local out = {}
	for i = 1, #words do
		out[i] = quote(words[i])
	end
	return table.concat(out, " ")
end

-- Split a directive's text into words as a POSIX shell would, without expansions: white space
-- separates, '...' is literal, "..." honours \" \\ \$ \` and a backslash escapes any character outside
-- quotes. Returns the words, or nil and a reason.
function M.split_words(s)
	local words, cur, have = {}, {}, false
	local i, n = 1, #s
	while i <= n do
		local c = s:sub(i, i)
		if c == "'" then
			local j = s:find("'", i + 1, true)
			if not j then
				return nil, "unterminated ' quote"
			end
			cur[#cur + 1] = s:sub(i + 1, j - 1)
			have, i = true, j + 1
		elseif c == '"' then
			have, i = true, i + 1
			while true do
				if i > n then
					return nil, 'unterminated " quote'
				end
				local d = s:sub(i, i)
				if d == '"' then
					i = i + 1
					break
				end
				if d == "\\" and i < n and s:sub(i + 1, i + 1):find('[\\"$`]') then
					i = i + 1
					d = s:sub(i, i)
				end
				cur[#cur + 1] = d
				i = i + 1
			end
		elseif c == "\\" then
			if i == n then
				return nil, "a backslash ends the line"
			end
			cur[#cur + 1] = s:sub(i + 1, i + 1)
			have, i = true, i + 2
		elseif c:find("%s") then
			if have then
				words[#words + 1] = table.concat(cur)
				cur, have = {}, false
			end
			i = i + 1
		else
			cur[#cur + 1] = c
			have, i = true, i + 1
		end
	end
	if have then
		words[#words + 1] = table.concat(cur)
	end
	return words
end

-- The roots named by the script's `#BB_LUA axl_finalize ROOT...` lines, in order (an empty list: no
-- directive). Like Slurm, which reads directives only in the script's leading block of comments,
-- the scan stops at the first line that is neither blank nor a comment. Returns nil and a reason for a
-- malformed directive or a root that is not absolute.
function M.roots(script_text)
	local prefix = "^#" .. M.settings.directive:gsub("%W", "%%%0") .. "%s+(.*)$"
	local roots = {}
	for line in (script_text .. "\n"):gmatch("([^\n]*)\n") do
		line = line:gsub("\r$", "")
		if not line:find("^%s*$") and not line:find("^#") then
			break
		end
		local rest = line:match(prefix)
		if rest and (rest:find("^axl_finalize%s") or rest:find("^axl_finalize$")) then
			local words, why = M.split_words(rest)
			if not words then
				return nil, "axl_finalize directive: " .. why
			end
			if #words < 2 then
				return nil, "axl_finalize directive names no root"
			end
			for k = 2, #words do
				if words[k]:sub(1, 1) ~= "/" then
					return nil, "axl_finalize: " .. words[k] .. ": not an absolute path"
				end
				roots[#roots + 1] = words[k]
			end
		end
	end
	return roots
end

local function read_file(path)
	local f, err = io.open(path, "rb")
	if not f then
		return nil, err
	end
	local text = f:read("*a")
	f:close()
	return text
end

local function script_roots(job_script)
	local text, err = read_file(job_script)
	if not text then
		return nil, "axl_finalize: cannot read the job script: " .. tostring(err)
	end
	return M.roots(text)
end

-- Run a shell command with no input, its output and errors captured, to the end: a child left running
-- would keep Slurm's reply pipe open and stage-out would hang until StageOutTimeout.
local function capture(cmd)
	local p = io.popen(cmd .. " </dev/null 2>&1", "r")
	if not p then
		return ""
	end
	local out = p:read("*a") or ""
	p:close()
	return out
end

-- The job's numeric uid and gid: Slurm 23.02 and later pass them to data_out; 22.05 passes only the
-- job id and the script (saved by slurmctld, owned by root), so ask slurmctld.
local function job_owner(job_id, uid, gid)
	if tostring(uid or ""):find("^%d+$") and tostring(gid or ""):find("^%d+$") then
		return tostring(uid), tostring(gid)
	end
	local out = capture(quote(M.settings.scontrol) .. " show job -o " .. quote(job_id))
	if out:match("^JobId=(%d+)") ~= job_id then
		return nil, nil, "cannot find the job's user: " .. (out:match("[^\n]*") or "")
	end
	uid = out:match("%sUserId=[^%s(]*%((%d+)%)")
	gid = out:match("%sGroupId=[^%s(]*%((%d+)%)")
	if not uid or not gid then
		return nil, nil, "cannot find the job's user in scontrol's reply"
	end
	return uid, gid
end

local function conf_dir()
	if M.settings.conf_dir then
		return M.settings.conf_dir
	end
	local conf = os.getenv("SLURM_CONF") or "/etc/slurm/slurm.conf"
	return conf:match("^(.*)/[^/]*$") or "."
end

local function stage_out_timeout()
	local seconds = 86400 -- Slurm's default
	local text = read_file(conf_dir() .. "/burst_buffer.conf")
	for line in (text or ""):gmatch("[^\n]+") do
		local v = line:lower():match("^%s*stageouttimeout%s*=%s*(%d+)")
		if v then
			seconds = tonumber(v)
		end
	end
	return seconds
end

-- Seconds finalize may wait: what StageOutTimeout leaves since `started`, less a fifth (at least 10 s)
-- for the commits that follow the wait.
local function wait_timeout(started)
	if M.settings.wait_timeout then
		return M.settings.wait_timeout
	end
	local total = stage_out_timeout()
	local left = total - (os.time() - (started or os.time()))
	return math.max(0, left - math.max(10, math.floor(total / 5)))
end

local MEANING = {
	["1"] = "some data did not arrive, temporaries aborted",
	["2"] = "bad usage or input, nothing changed",
	["3"] = "gave up waiting on the burst buffer, temporaries left",
	["4"] = "could not act on some temporaries, left in place",
}

-- Runs as the job's user, under /bin/sh -c with the values as positional arguments (never pasted into
-- the script): checks that the switch took, that every root is a directory the user can read, and that
-- the command exists, before running anything; then runs finalize and prints its last line and code.
local USER_SIDE = [[
uid=$1 gid=$2 n=$3
shift 3
fail() { printf '%s\nstatus=check\n' "$1"; exit 0; }
[ "$(id -u)" = "$uid" ] && [ "$(id -g)" = "$gid" ] || fail "could not switch to uid $uid gid $gid"
i=0
for r do
	[ "$i" -lt "$n" ] || break
	[ -d "$r" ] || fail "$r: no such directory (as uid $uid)"
	{ [ -r "$r" ] && [ -x "$r" ]; } || fail "$r: not readable (as uid $uid)"
	i=$((i + 1))
done
shift "$n"
command -v "$1" >/dev/null 2>&1 || fail "$1: command not found (set AXL_STATELESS)"
{ "$@" 2>&1; printf '\nstatus=%s\n' "$?"; } | tail -n 3
]]

local function command_words()
	local words = {}
	for w in (os.getenv("AXL_STATELESS") or M.settings.command):gmatch("%S+") do
		words[#words + 1] = w
	end
	return words
end

--[[
Check the job script's axl_finalize directives (no file system access: slurmctld calls
slurm_bb_job_process synchronously). Returns slurm.SUCCESS, or slurm.ERROR and a message that sbatch
prints, rejecting the job.
--]]
function M.job_process(job_script)
	local roots, err = script_roots(job_script)
	if not roots then
		return ERROR, err
	end
	return SUCCESS
end

--[[
Finalize the roots the job's directives name, as the job's user. `uid` and `gid` are data_out's
arguments of the same names (nil on Slurm 22.05, which does not pass them); `started` the os.time() at
which the caller's slurm_bb_data_out began (for the wait timeout; default now). Returns slurm.SUCCESS
(and a message) when finalize exits 0 or there is no directive, else slurm.ERROR and one line for the
job's Reason.
--]]
-- `path`, or when something already has that name (an earlier run of the same job's stage-out),
-- the first of path with ".2", ".3", ... before its extension that nothing has: finalize truncates
-- its report, and the earlier one is the record of what that run did.
local function unused_report_name(path)
	local function taken(p)
		local f = io.open(p, "r")
		if f then
			f:close()
			return true
		end
		return false
	end
	if not taken(path) then
		return path
	end
	local stem, ext = path:match("^(.*)(%.[^./]*)$")
	if not stem then
		stem, ext = path, ""
	end
	for n = 2, 1000 do
		local candidate = stem .. "." .. n .. ext
		if not taken(candidate) then
			return candidate
		end
	end
	return path
end

function M.data_out(job_id, job_script, uid, gid, started)
	job_id = tostring(job_id)
	local roots, err = script_roots(job_script)
	if not roots then
		return ERROR, err .. "; nothing done"
	end
	if #roots == 0 then
		return SUCCESS
	end
	local why
	uid, gid, why = job_owner(job_id, uid, gid)
	if not uid then
		return ERROR, "axl_finalize: " .. why .. "; nothing done"
	end
	if tonumber(uid) == 0 then
		return ERROR, "axl_finalize: the job runs as root, refused; nothing done"
	end

	local report = unused_report_name(M.settings.report:gsub("%%([rjt%%])", function(c)
		return ({ r = roots[1], j = job_id, t = os.date("!%Y%m%dT%H%M%SZ"), ["%"] = "%" })[c]
	end))
	local argv = command_words()
	for _, w in ipairs({ "finalize", "--report", report, "--wait-timeout", tostring(wait_timeout(started)) }) do
		argv[#argv + 1] = w
	end
	for _, w in ipairs(M.settings.finalize_options) do
		argv[#argv + 1] = w
	end
	argv[#argv + 1] = "--"
	for _, r in ipairs(roots) do
		argv[#argv + 1] = r
	end

	-- cd /: slurmctld's working directory may be closed to the user. env -i: slurmctld's environment is
	-- root's, and nothing of it belongs in a process the user owns.
	local cmd = "cd / && "
		.. quote(M.settings.setpriv)
		.. " --reuid="
		.. uid
		.. " --regid="
		.. gid
		.. " --init-groups --no-new-privs -- env -i "
		.. quote("PATH=" .. M.settings.path)
		.. " LANG=C.UTF-8 /bin/sh -c "
		.. quote(USER_SIDE)
		.. " sh "
		.. quote_all({ uid, gid, tostring(#roots) })
		.. " "
		.. quote_all(roots)
		.. " "
		.. quote_all(argv)
	log("job %s: finalize as uid %s over %d root(s), report %s", job_id, uid, #roots, report)
	local out = capture(cmd)

	local lines = {}
	for line in out:gmatch("[^\n]+") do
		lines[#lines + 1] = line
	end
	local status = lines[#lines] and lines[#lines]:match("^status=(%S+)$")
	local said = status and lines[#lines - 1] or lines[#lines] or "(no output)"
	said = said:gsub("[%c]", " ")
	if status == nil then
		log("job %s: could not run as uid %s: %s", job_id, uid, out)
		return ERROR, "axl_finalize: could not run as uid " .. uid .. ": " .. said .. "; nothing done"
	end
	if status == "check" then
		return ERROR, "axl_finalize: " .. said .. "; nothing done"
	end
	log("job %s: finalize exited %s: %s", job_id, status, said)
	if status == "0" then
		return SUCCESS, "axl_finalize: " .. said .. "; report " .. report
	end
	local meaning = MEANING[status] or (tonumber(status) and tonumber(status) > 128 and
		("stopped by signal " .. (tonumber(status) - 128))) or "unexpected"
	return ERROR, "axl_finalize: finalize exited " .. status .. " (" .. meaning .. "): " .. said
		.. "; report " .. report
end

return M
