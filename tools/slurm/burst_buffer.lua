--[[
burst_buffer.lua for a site that has none: Slurm's burst_buffer/lua plugin calls these hooks; the only
one that acts is stage-out (slurm_bb_data_out), which finalizes the roots a job names with

    #BB_LUA axl_finalize ROOT [ROOT...]

through axl_stateless.lua (beside this file; see its settings). Every hook Slurm 22.05 through 25.x
requires is defined; each returns at once except data_out. Arguments are strings; later releases pass
more of them (uid, gid, job_info), which the hooks take and ignore unless they need them.

Install: this file and axl_stateless.lua in the directory of slurm.conf, with
BurstBufferType=burst_buffer/lua in slurm.conf and Directive=BB_LUA in burst_buffer.conf.
--]]

local function here()
	local source = debug.getinfo(1, "S").source
	local dir = source:match("^@(.*)/[^/]*$")
	if dir then
		return dir
	end
	return ((os.getenv("SLURM_CONF") or "/etc/slurm/slurm.conf"):match("^(.*)/[^/]*$") or ".")
end

local axl = dofile(here() .. "/axl_stateless.lua")
-- burst_buffer.conf (StageOutTimeout) lives beside this file, wherever slurm.conf was given from.
axl.settings.conf_dir = here()

-- At submission, in slurmctld (must be quick). By default the job is accepted whatever its directive
-- says, and a malformed directive or a relative root becomes the error in its Reason at stage-out,
-- with nothing changed; a site that would rather have sbatch refuse such a job up front, before it
-- spends its allocation, sets axl.settings.check_at_submission = true.
function slurm_bb_job_process(job_script, uid, gid, job_info)
	if axl.settings.check_at_submission then
		return axl.job_process(job_script)
	end
	return slurm.SUCCESS
end

-- In slurmctld: no pools, so Slurm tracks no burst-buffer space.
function slurm_bb_pools()
	return slurm.SUCCESS
end

function slurm_bb_setup(job_id, uid, gid, pool, bb_size, job_script, job_info)
	return slurm.SUCCESS
end

function slurm_bb_data_in(job_id, job_script, uid, gid, job_info)
	return slurm.SUCCESS
end

-- Slurm 24.05 and later poll this after data_in; anything but "BUSY" lets the job go on.
function slurm_bb_test_data_in(job_id, job_script, uid, gid, job_info)
	return slurm.SUCCESS
end

function slurm_bb_real_size(job_id, uid, gid, job_info)
	return slurm.SUCCESS
end

-- In slurmctld (must be quick): no variables added to the job's environment.
function slurm_bb_paths(job_id, job_script, path_file, uid, gid, job_info)
	return slurm.SUCCESS
end

function slurm_bb_pre_run(job_id, job_script, uid, gid, job_info)
	return slurm.SUCCESS
end

function slurm_bb_post_run(job_id, job_script, uid, gid, job_info)
	return slurm.SUCCESS
end

-- After the job: finalize its roots as the job's user; an error and its line go to the job's Reason.
function slurm_bb_data_out(job_id, job_script, uid, gid, job_info)
	return axl.data_out(job_id, job_script, uid, gid, os.time())
end

-- Slurm 24.05 and later poll this after data_out; data_out above is synchronous, so it is done.
function slurm_bb_test_data_out(job_id, job_script, uid, gid, job_info)
	return slurm.SUCCESS
end

-- Also after `scancel --hurry`: deletes nothing. Temporaries a finalize did not settle are left for
-- `axl-stateless cleanup`, which commits the complete ones instead of losing them.
function slurm_bb_job_teardown(job_id, job_script, hurry, uid, gid, job_info)
	return slurm.SUCCESS
end

-- `scontrol show bbstat`.
function slurm_bb_get_status(uid, gid, ...)
	return slurm.SUCCESS, "axl_finalize: finalizes the roots named by #BB_LUA axl_finalize lines at stage-out\n"
end
